function greet(name) {
  return "Hello, " + name + "!";
}
document.getElementById("greeting").textContent = greet("DeployLite");
