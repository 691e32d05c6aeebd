"""Private-GSD (Liu et al., ICML 2023): differentially private synthetic data whose k-way
marginals, prefix, range and halfspace queries match Gaussian-noised answers, found by the
engine's population search.

Parts: ``domain`` (user-given column domains, encoding, CSV/parquet input), ``queries``
(workloads and their sensitivity), ``accounting`` (ρ-zCDP, the privacy ledger),
``mechanisms`` (Gaussian, Gumbel top-K), ``ga`` (incremental fitness and one-row operators),
``checkpoint`` (saved measurements and GA state for resuming), ``synthesizer``
(``PrivateGSD``: one-shot, adaptive and hybrid modes), ``evaluate`` (non-private error
report).
"""
