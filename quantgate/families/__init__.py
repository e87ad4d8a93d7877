"""The task types quantgate ships, one module each (registered on first use by
quantgate.tasktypes.task_types(), sentence_embedding.py first), and what some of them share: classifier
metrics and gates (classification.py) and the Hugging Face text export (hf_text.py)."""
