"""The destination service: streams endpoints and service profiles to the proxies."""
