"""Generated gRPC / protobuf code for ``protos/`` and the script that regenerates it.

Do not edit the generated modules under ``recsys/`` by hand: change the ``.proto`` files
and run ``python -m serving._proto.regenerate``. CI runs ``--check`` so that the committed
code never drifts from the contract.
"""
