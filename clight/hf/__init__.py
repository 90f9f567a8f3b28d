"""Files clight writes into Hugging Face folders (the model class of the classification exports)."""
