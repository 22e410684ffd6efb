"""The low-level runtime: devices, compiling, the optimizer update, the process group
under torchrun, random-number streams, atomic files, and the one module of private torch
APIs. Imports torch only, nothing else of iwae's."""
