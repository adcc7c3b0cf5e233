# Stands in for a machine without torch: importing it fails as it would there.
raise ModuleNotFoundError("No module named 'torch'", name="torch")
