"""OpenAI Responses: the request's validation and tenancy rules, the stream's dialect."""
