"""Turning user models into what agents run.

`coordinator.convert.onnx_export` exports a torch `nn.Module` to one self-contained `.onnx` file and
checks it numerically against torch with onnxruntime; it also loads user models given as a
`package.module:factory` spec plus a state_dict (`load_factory`) or as a `torch.export` program
(`load_exported_program`). torch is imported by that module only, so importing this package is cheap.
"""
