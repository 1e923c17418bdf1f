"""The built-in task: multi-digit addition with worked carry steps, a teacher trained from
scratch on CPU and a much smaller student, so that distillation has something real to do."""
