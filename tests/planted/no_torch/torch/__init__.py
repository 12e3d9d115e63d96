# On PYTHONPATH for the runner tests that only exercise processes and files: a worker then
# starts in about a second instead of spending seconds importing torch it does not use.
raise ImportError("torch is blocked on purpose: tests/planted/no_torch is on PYTHONPATH")
