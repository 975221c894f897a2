"""Load: experiments (stress), their runs (StressRun), arrival schedules, targets, virtual-time replay."""
