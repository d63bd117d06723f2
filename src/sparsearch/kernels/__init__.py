"""Native kernels for training and the per-layer inference engine, built for this CPU on first use
(`sparsearch.native`) and called through ctypes: `loading.py` loads the libraries; `sparse_conv.py` lays a mask's
kept weights out and runs the sparse convolution and linear layer on `sparse_kernels.cpp` (the sparse convolution's
three products, a linear layer on token rows, BatchNorm on NCHW planes; used by `train.sparse`, `train.batchnorm`
and `runtime.kernels`); `depthwise.py` + `depthwise.cpp` (the depthwise convolution's backward on NHWC activations,
used by the search's operations). They depend on nothing of the project but `native`, so models, training and the
runtime can all use them."""
