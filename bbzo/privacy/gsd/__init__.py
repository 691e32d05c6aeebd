"""Private-GSD (Liu et al., ICML 2023): differentially private synthetic data whose k-way
marginals match Gaussian-noised answers, found by the engine's population search.

Parts: ``domain`` (user-given column domains, encoding), ``queries`` (marginal workloads and
their sensitivity), ``accounting`` (ρ-zCDP, the privacy ledger), ``mechanisms`` (Gaussian,
Gumbel top-K), ``ga`` (incremental fitness and one-row operators), ``synthesizer``
(``PrivateGSD``), ``evaluate`` (non-private error report).
"""
