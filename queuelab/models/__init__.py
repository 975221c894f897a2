"""The model interface and the models: transformers (its KV cache, token sampling), simulated, embedded."""
