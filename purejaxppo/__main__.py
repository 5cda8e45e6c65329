from purejaxppo.cli import entry

entry()
