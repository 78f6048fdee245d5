"""The paper's tables and figures as named experiments, and the results ledger's report."""
