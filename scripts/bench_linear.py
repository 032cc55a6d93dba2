"""Decoding's few-row CPU matmuls, F.linear against the small-batch kernel, for the SRU++ models' weight shapes
and 1 to 8 rows (``sru_lm.bench.linear`` holds the method).

    python scripts/bench_linear.py --threads 1 --out benchmarks/bench_linear.md
"""

from sru_lm.bench.linear import main

if __name__ == "__main__":
    main()
