"""Raises under torch's @record, which writes TORCHELASTIC_ERROR_FILE."""
from torch.distributed.elastic.multiprocessing.errors import record


@record
def main():
    raise ValueError("boom from the worker")


main()
