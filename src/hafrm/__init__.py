"""hafrm: reward models trained with the Hybrid Alignment Framework (HAF-RM, arXiv 2407.04185).

A reward head and the language-model (policy) head share one transformer backbone; training adds
alpha * (DPO policy loss) to the Bradley-Terry reward loss so the shared backbone is shaped by both.
"""

__version__ = "0.1.0"
