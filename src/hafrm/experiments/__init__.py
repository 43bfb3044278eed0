"""The paper's protocols and the claim's learning curves: runs over methods and seeds (protocols, curves), their
records (runs), the Markdown reports (report) and checkpoint selection (selection)."""
