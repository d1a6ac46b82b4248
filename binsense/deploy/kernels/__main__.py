"""``python -m binsense.deploy.kernels``: build the C kernel now and print the path taken."""

from binsense.deploy import kernels

if __name__ == "__main__":
    lib = kernels.library()
    print(f"cpu: {', '.join(kernels.cpu_features()) or 'no popcount extensions'}")
    print(f"backend: {kernels.backend()} (available: {', '.join(kernels.available())})")
    print(f"openmp: {kernels.openmp()}; cache: {kernels.cache_dir()}")
