"""A local FirecREST v2-compatible server (plus OAuth2 token endpoint) for trying and testing ci-runner."""
