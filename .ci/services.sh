# Services the test suite needs, started and stopped by ./dev test.
# Sourced by ./dev; defines start_services and stop_services.
start_services() { :; }
stop_services() { :; }
