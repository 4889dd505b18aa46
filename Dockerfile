# The project's image for Kubernetes (jobs/kubernetes/*.yaml, `pipeline schedule --format
# kubernetes`): Ray's CUDA image at the project's Ray pin, with this project and its `gpu`
# extra (the pinned vLLM) installed at /app.
#   docker build -t REGISTRY/pipeline:0.1.0-gpu . && docker push REGISTRY/pipeline:0.1.0-gpu
# (Not built by the test suite: there is no container runtime on its machines.)
FROM rayproject/ray:2.60.0-py311-gpu
COPY --chown=ray:users . /app
RUN pip install --no-cache-dir -e "/app[gpu]"
WORKDIR /app
