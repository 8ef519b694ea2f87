"""Other APIs than chat completions, read in their own shape and translated to and from the chat form the engine
takes (one module per API)."""
