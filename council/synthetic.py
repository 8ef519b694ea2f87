"""`python -m council.synthetic`: the tiny qwen35 test model writer (it lives in `council.setup.synthetic`)."""

from council.setup.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
