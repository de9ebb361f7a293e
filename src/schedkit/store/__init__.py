"""The schedule store in Redis: key layout, the task record codec, the Lua scripts, and the
store itself (blocking, and awaited on the server's event loop)."""
