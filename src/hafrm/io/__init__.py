"""Files in and out, below everything else: model and tokenizer loading (pretrained), Hugging Face exports and their
portability to transformers 4.x, the default model and data, atomic writes and the checks of files read back."""
