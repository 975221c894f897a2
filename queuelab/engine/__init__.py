"""The engine: RequestQueue (admission, lifecycle, the step loop), its runner, schedulers and recorder."""
