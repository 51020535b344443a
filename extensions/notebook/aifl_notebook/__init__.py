"""AI Factory Lab, notebook side: code that runs inside a user's session job."""
