"""End-to-end tests: the demo server and whole services, from outside, over real sockets."""
