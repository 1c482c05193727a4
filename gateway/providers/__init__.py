"""Model providers behind one interface: relay (OpenAI bytes), litellm, local."""
