from alexnet.cli import console

console()
