"""Math as plain functions: a slow reference beside each fast path."""
