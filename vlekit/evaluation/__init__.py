"""What a run scores: metrics, the eval command, the predictor, ITM retrieval, LLM answers, plots."""
