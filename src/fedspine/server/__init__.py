"""The server half of a run, without Flower: the core (`Server`) and the run driver."""
