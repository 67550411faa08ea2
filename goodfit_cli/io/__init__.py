"""Files: the one atomic writer (atomic.py), safetensors checkpoints and training states
(checkpoint.py), and the run folder's layout (rundir.py)."""
