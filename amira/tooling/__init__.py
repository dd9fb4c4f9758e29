"""Developer tooling, never imported by the serving code.

* `test_models`: the bit-for-bit generator of the shipped random-weight test models
  (`python -m amira.tooling.test_models`);
* `triton_launcher`: a real CPU-only Triton Inference Server run locally from the `nvidia-pytriton`
  wheel (`amira triton`, the tests and the benchmarks);
* `model_fetch`: downloading a real model from a model hub and building its repository
  (`amira model fetch`);
* `triton_repository`: writing the Triton model repositories it (or a production Triton) serves
  (`amira model-repo build`); `triton_python_model` is the Python-backend model that CPU-flavour
  repositories copy as `1/model.py`.

The server (`amira.core`, `amira.backends`, `amira.server`, `amira.models`, `amira.recognizer`,
`amira.stream_session`, `amira.settings`, `amira.client`) never imports this package; only the
command line does, lazily, for its tooling commands.
"""
