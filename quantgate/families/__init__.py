"""The task types quantgate ships beside sentence embeddings, one module each (registered on first use
by quantgate.tasktypes.task_types()), and what they share: classifier metrics and gates
(classification.py) and the Hugging Face text export (hf_text.py)."""
