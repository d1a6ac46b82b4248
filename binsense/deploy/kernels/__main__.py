"""``python -m binsense.deploy.kernels``: load (or build) the C kernel and print the path
taken and the library file."""

from binsense.deploy import kernels

if __name__ == "__main__":
    lib = kernels.library()
    print(f"cpu: {', '.join(kernels.cpu_features()) or 'no popcount extensions'}")
    print(f"backend: {kernels.backend()} (available: {', '.join(kernels.available())})")
    print(f"openmp: {kernels.openmp()}; library: {kernels.where()}")
