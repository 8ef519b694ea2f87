"""Other APIs' request and response shapes, translated to and from the chat completion the engine takes."""
