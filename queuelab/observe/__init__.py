"""Views that only read the engine and the runs: panels, the notebook dashboard, plots, the terminal."""
