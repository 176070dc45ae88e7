"""Learning: policies, training (Behavior Cloning), checkpoints, closed-loop evaluation."""
