"""Low-level numerics and device facts shared by the archs, the data pipeline, the fast forms and training:
``matlab_bicubic`` (the one MATLAB ``imresize`` bicubic kernel, as a batched torch op and for uint8 images) and
``device`` (what this machine's devices can run: native bf16, compile, the CPU's name and ISA)."""
