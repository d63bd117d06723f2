"""Native training kernels, built for this CPU on first use (`sparsearch.native`) and called through ctypes:
`loading.py` loads the libraries; `sparse_kernels.cpp` (the sparse convolution's three products and BatchNorm on
NCHW planes, used by `train.sparse` and `train.batchnorm`); `depthwise.py` + `depthwise.cpp` (the depthwise
convolution's backward on NHWC activations, used by the search's operations). They depend on nothing of the
project but `native`, so models and training can both use them."""
