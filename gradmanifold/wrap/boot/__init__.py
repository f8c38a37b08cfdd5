"""Start-up folder of wrap mode: first on the wrapped job's PYTHONPATH, so Python runs its sitecustomize."""
