"""The vpnjail compatibility lab: test worlds, a FortiGate-like responder,
evidence and reports for strongSwan clients in isolated network stacks."""
