"""The HTTP/WebSocket servers: `cloud` (encoder) and `edge` (sampler + decoder), on shared app machinery."""
