"""The page's routes: the page itself and its health (`pages`), its API (`jobs`)."""
