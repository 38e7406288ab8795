"""Real deployment on SuperLink and SuperNodes: certificates, node data, `deploy-local`."""
