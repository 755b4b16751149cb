"""`python -m mmrl ...` (also what `torchrun -m mmrl ...` runs)."""
from mmrl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
