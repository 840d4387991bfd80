"""A ReAct agent: typed tools (calculator, date, files, RAG search, MCP servers) and the Thought -> Action ->
Observation loop over the chat template's tool calls."""
