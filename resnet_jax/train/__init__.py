"""Training: state, optimizer and schedules, the pure steps, and the loop."""
